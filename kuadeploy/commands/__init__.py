"""Commands: one per thing a user can ask for. Each decides purely, then appends."""
