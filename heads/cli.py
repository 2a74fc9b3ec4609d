"""`omni-heads`: thin click front end of phase two (fit, evaluate, predict, embed, sweep) and labels."""
import click

from pipeline.cli import labels


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train and use OmniArt's multi-task heads on a feature cache."""


main.add_command(labels)
