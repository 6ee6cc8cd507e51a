"""packet package."""
