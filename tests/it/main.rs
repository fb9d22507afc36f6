mod mock_api;
mod real_cli;
mod support_real;
