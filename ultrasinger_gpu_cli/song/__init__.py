"""The song's way, pure: audio in and out, the voice's regions, words, lyrics and timings, pitch, tempo, notes, the UltraStar file, its picture and its score."""
