// inert(): the one escaping rule for agent-written text, shared by every page (and identical to the
// CLI's cli.output.inert): control, bidi and line-separator characters are shown escaped (\x1b, \u202e)
// so text cannot reorder or hide what the page shows. \n and \t are escaped too unless keepLines.
// control, bidi and separator characters (the class cli.output.inert escapes), \n and \t excluded
const INERT_CLASS = "\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\ud800-\\udfff\\u061c\\u200e\\u200f" +
  "\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069";
const INERT_ALL = new RegExp("[\\n\\t" + INERT_CLASS + "]", "gu");
const INERT_KEEP = new RegExp("[" + INERT_CLASS + "]", "gu");
const INERT_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"};
function inert(text, keepLines) {
  return String(text).replace(keepLines ? INERT_KEEP : INERT_ALL, (c) => {
    if (INERT_NAMED[c]) return INERT_NAMED[c];
    const n = c.charCodeAt(0);
    return n <= 0xff ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16).padStart(4, "0");
  });
}
