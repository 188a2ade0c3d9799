"""Running a song: events, the stage runner and its fallback ladder, the resume cache, song folders and the pipeline."""
