"""The imperative shell: actors, supervisors, step runners and the coordinator."""
