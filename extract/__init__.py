"""Phase one: run a frozen ImageNet backbone once over a collection and cache its pooled features."""
