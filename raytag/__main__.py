from raytag.cli import main

main()
