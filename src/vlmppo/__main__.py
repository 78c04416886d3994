from vlmppo.cli import main

main()
