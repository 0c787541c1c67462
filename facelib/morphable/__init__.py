"""3D morphable models: the MorphableModel record, file loaders, landmark correspondence and fitting."""
