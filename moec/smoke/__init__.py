"""`moec smoke-run`: a short real training run that proves a spec's model learns, balances and runs."""
