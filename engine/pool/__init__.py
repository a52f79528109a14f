"""The pool: sans-IO core, Trio shell, supervision, health, policy, resilience, bridge."""
