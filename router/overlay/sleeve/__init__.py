"""sleeve."""
