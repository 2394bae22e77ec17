"""Cross-cutting pieces every billing package may import: the error root, months in a zone,
instants as text, and the one CLI runner. Nothing here imports another billing package."""
