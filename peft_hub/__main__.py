"""``python -m peft_hub`` runs the CLI."""

from peft_hub.cli import main

main()
