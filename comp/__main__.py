"""`python -m comp ...`, which is also what `accelerate launch -m comp train ...` runs."""
from .cli import main

main()
