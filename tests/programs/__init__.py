"""Programs that exist only in the test suite, registered through settings like a user's own."""
