"""HTTP routes: short functions that parse, call crud/publish, and return."""
