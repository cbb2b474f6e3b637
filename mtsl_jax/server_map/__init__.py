"""The study of when the shared server part helps (docs/when_mtsl_helps.md)."""
