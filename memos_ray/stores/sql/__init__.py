"""Relational store: users, cubes, grants, API keys."""
