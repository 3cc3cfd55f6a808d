"""`histostain pipeline`: IHC tiles -> synthetic H&E -> nuclei -> metrics and a visual report."""
