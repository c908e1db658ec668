module agentvault/bench/loadgen

go 1.19
