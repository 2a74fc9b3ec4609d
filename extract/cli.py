"""`omni-extract`: thin click front end of phase one."""
import click


@click.command()
def main():
    """Extract backbone features of every image into an HDF5 feature cache."""
