"""Small utilities shared by the tasks: config instantiation and run-directory checks."""
