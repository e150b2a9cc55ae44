"""The policy lab: simulate a rulebook over a synthetic city for years and report its effects."""
