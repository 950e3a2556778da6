from ppo_cli.cli import main

main()
