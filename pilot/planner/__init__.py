"""The planner: a prompt turned into a validated plan by the user's own model (POST /api/plans/draft)."""
