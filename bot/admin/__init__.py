"""Community administration: importing the grid tree and people, invites, the admin CLI."""
