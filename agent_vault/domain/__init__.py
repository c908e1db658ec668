"""Domain operations: authorisation + validation + one transaction + one audit record each."""
