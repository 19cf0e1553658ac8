"""kexue package."""
