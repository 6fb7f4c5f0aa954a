"""The web console for grid heads and community admins (``/console/``): sign-in by a one-time
link asked for in chat, role-scoped pages of the same figures as the reports, a few actions."""
