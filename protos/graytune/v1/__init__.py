"""Generated stubs of the graytune.v1 contract. Regenerate with scripts/gen_protos.sh."""
