"""Click commands of the pipeline package (`omni-heads labels`)."""
import click


@click.command()
def labels():
    """Print label statistics of collection metadata."""
