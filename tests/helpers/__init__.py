"""What several test files share (fakes, oracles, data makers), imported as ``helpers.<module>``; a test
file imports from here or from conftest.py, never from another test file."""
