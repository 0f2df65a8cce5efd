"""Ray Serve deployment classes and the app builders that wire them."""
