from paretopipe.cli import main

main()
