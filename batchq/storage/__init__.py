"""The only code that touches Redis or the disk."""
