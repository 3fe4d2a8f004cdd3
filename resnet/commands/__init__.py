"""Sub-commands of the `resnet` command line, one module each."""
