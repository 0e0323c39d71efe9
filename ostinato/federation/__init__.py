"""Federation: export anonymised learnings to a reviewable YAML file and merge such files into a store."""
