global using Lrl;
global using Lrl.Models;
global using Xunit;
