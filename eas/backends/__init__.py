"""Optional generation backends outside eas's own engine (each imports its engine lazily)."""
