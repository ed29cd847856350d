"""The demo zoos: built-in bases, the datasets, and the builder that trains the zoo."""
