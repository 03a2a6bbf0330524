from softguard.cli.main import main

main()
