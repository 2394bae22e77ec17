"""The usage lake's storage: a local folder or an S3-compatible bucket, one interface (`LakeStore`)."""
