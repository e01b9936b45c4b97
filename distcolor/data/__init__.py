"""Data: sources -> WebDataset shards -> streaming loader."""
