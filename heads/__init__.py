"""Phase two: a shared ReLU layer and one head per task, trained in seconds on cached features."""
