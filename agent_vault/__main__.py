from agent_vault.cli import main

main()
