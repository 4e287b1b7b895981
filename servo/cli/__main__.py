"""`python -m servo.cli`."""

from servo.cli import main

main()
