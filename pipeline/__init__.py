"""Collection metadata to labels and splits, and the end-to-end run of both phases."""
