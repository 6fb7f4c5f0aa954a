"""Gridbot: chat front end for community grid governance."""
