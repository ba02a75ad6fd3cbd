"""Everything that imports ray: session set-up, Ray Train loops, Ray Data, actors, Tune."""
