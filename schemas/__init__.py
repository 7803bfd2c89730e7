"""fluxrelay wire contract: JSON Schemas, subjects, codecs and CDEvents shared by both sides."""
