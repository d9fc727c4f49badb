# Rendered by `labctl terraform render` from ../clusters.json. Do not edit: change clusters.json and render again;
# `labctl terraform check` fails while this folder differs from what clusters.json renders.

resource "terraform_data" "lab" {
  input = {
    config = "../clusters.json"
  }
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_platform-master" {
  triggers_replace = "fc3ff73ba2c69e6f"
  input = {
    cluster = "platform"
    node    = "platform-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_platform-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster platform --wait --node platform-master"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_platform-master" {
  input = {
    cluster = "platform"
    node    = "platform-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster platform --node platform-master --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_platform-worker1" {
  triggers_replace = "7d7e4680cccf0bc8"
  input = {
    cluster = "platform"
    node    = "platform-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_platform-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster platform --wait --node platform-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_platform-worker1" {
  input = {
    cluster = "platform"
    node    = "platform-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster platform --node platform-worker1 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_platform-worker2" {
  triggers_replace = "a6645949f35c846c"
  input = {
    cluster = "platform"
    node    = "platform-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster platform --wait --node platform-worker2"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_platform-worker2" {
  input = {
    cluster = "platform"
    node    = "platform-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster platform --node platform-worker2 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_dev-master" {
  triggers_replace = "887308b030fc4347"
  input = {
    cluster = "dev"
    node    = "dev-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_dev-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster dev --wait --node dev-master"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_dev-master" {
  input = {
    cluster = "dev"
    node    = "dev-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster dev --node dev-master --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_dev-worker1" {
  triggers_replace = "842eca2148f3b8c8"
  input = {
    cluster = "dev"
    node    = "dev-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster dev --wait --node dev-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_dev-worker1" {
  input = {
    cluster = "dev"
    node    = "dev-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster dev --node dev-worker1 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_staging-master" {
  triggers_replace = "dda2c991bbe896e2"
  input = {
    cluster = "staging"
    node    = "staging-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_staging-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster staging --wait --node staging-master"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_staging-master" {
  input = {
    cluster = "staging"
    node    = "staging-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster staging --node staging-master --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_staging-worker1" {
  triggers_replace = "68c8b61ee9d8946a"
  input = {
    cluster = "staging"
    node    = "staging-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster staging --wait --node staging-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_staging-worker1" {
  input = {
    cluster = "staging"
    node    = "staging-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster staging --node staging-worker1 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_prod-master" {
  triggers_replace = "7ee0b28383ca0ad6"
  input = {
    cluster = "prod"
    node    = "prod-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_prod-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster prod --wait --node prod-master"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_prod-master" {
  input = {
    cluster = "prod"
    node    = "prod-master"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster prod --node prod-master --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_prod-worker1" {
  triggers_replace = "67e1b823db426772"
  input = {
    cluster = "prod"
    node    = "prod-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_prod-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster prod --wait --node prod-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_prod-worker1" {
  input = {
    cluster = "prod"
    node    = "prod-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster prod --node prod-worker1 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "vms_prod-worker2" {
  triggers_replace = "6641c569bbe8ffa8"
  input = {
    cluster = "prod"
    node    = "prod-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.node_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only vms,prepare,runtime,kubepkgs --cluster prod --wait --node prod-worker2"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "node_prod-worker2" {
  input = {
    cluster = "prod"
    node    = "prod-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.lab,
  ]
  provisioner "local-exec" {
    when        = destroy
    command     = "labctl --config ../clusters.json destroy --cluster prod --node prod-worker2 --yes --wait"
    working_dir = path.module
  }
}

resource "terraform_data" "init_platform" {
  triggers_replace = "cc313d1300442b06"
  input = {
    cluster = "platform"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.vms_platform-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only init --cluster platform --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "init_dev" {
  triggers_replace = "c01e014c2ae5f0fd"
  input = {
    cluster = "dev"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.vms_dev-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only init --cluster dev --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "init_staging" {
  triggers_replace = "b2aeee49c3e6d224"
  input = {
    cluster = "staging"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.vms_staging-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only init --cluster staging --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "init_prod" {
  triggers_replace = "5df11d8930cb9b4e"
  input = {
    cluster = "prod"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.vms_prod-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only init --cluster prod --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_platform-worker1" {
  triggers_replace = "7d7e4680cccf0bc8"
  input = {
    cluster = "platform"
    node    = "platform-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_platform,
    terraform_data.vms_platform-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster platform --wait --node platform-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_platform-worker2" {
  triggers_replace = "a6645949f35c846c"
  input = {
    cluster = "platform"
    node    = "platform-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_platform,
    terraform_data.vms_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster platform --wait --node platform-worker2"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_dev-worker1" {
  triggers_replace = "842eca2148f3b8c8"
  input = {
    cluster = "dev"
    node    = "dev-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_dev,
    terraform_data.vms_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster dev --wait --node dev-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_staging-worker1" {
  triggers_replace = "68c8b61ee9d8946a"
  input = {
    cluster = "staging"
    node    = "staging-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_staging,
    terraform_data.vms_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster staging --wait --node staging-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_prod-worker1" {
  triggers_replace = "67e1b823db426772"
  input = {
    cluster = "prod"
    node    = "prod-worker1"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_prod,
    terraform_data.vms_prod-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster prod --wait --node prod-worker1"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "join_prod-worker2" {
  triggers_replace = "6641c569bbe8ffa8"
  input = {
    cluster = "prod"
    node    = "prod-worker2"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.init_prod,
    terraform_data.vms_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only join --cluster prod --wait --node prod-worker2"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "cni_platform" {
  triggers_replace = "9a022c7e4e43f277"
  input = {
    cluster = "platform"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.join_platform-worker1,
    terraform_data.join_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only cni --cluster platform --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "cni_dev" {
  triggers_replace = "3dc36ee05e2a4b10"
  input = {
    cluster = "dev"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.join_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only cni --cluster dev --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "cni_staging" {
  triggers_replace = "e8eef656c549e51a"
  input = {
    cluster = "staging"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.join_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only cni --cluster staging --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "cni_prod" {
  triggers_replace = "ae66d20ae64eccf0"
  input = {
    cluster = "prod"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.join_prod-worker1,
    terraform_data.join_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only cni --cluster prod --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_platform-master" {
  triggers_replace = "fc3ff73ba2c69e6f"
  input = {
    cluster = "platform"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.vms_platform-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster platform --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_platform-worker1" {
  triggers_replace = "7d7e4680cccf0bc8"
  input = {
    cluster = "platform"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.join_platform-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster platform --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_platform-worker2" {
  triggers_replace = "a6645949f35c846c"
  input = {
    cluster = "platform"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.join_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster platform --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_dev-master" {
  triggers_replace = "887308b030fc4347"
  input = {
    cluster = "dev"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.vms_dev-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster dev --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_dev-worker1" {
  triggers_replace = "842eca2148f3b8c8"
  input = {
    cluster = "dev"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.join_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster dev --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_staging-master" {
  triggers_replace = "dda2c991bbe896e2"
  input = {
    cluster = "staging"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_staging,
    terraform_data.vms_staging-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster staging --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_staging-worker1" {
  triggers_replace = "68c8b61ee9d8946a"
  input = {
    cluster = "staging"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_staging,
    terraform_data.join_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster staging --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_prod-master" {
  triggers_replace = "7ee0b28383ca0ad6"
  input = {
    cluster = "prod"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.vms_prod-master,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster prod --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_prod-worker1" {
  triggers_replace = "67e1b823db426772"
  input = {
    cluster = "prod"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.join_prod-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster prod --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "nodeconfig_prod-worker2" {
  triggers_replace = "6641c569bbe8ffa8"
  input = {
    cluster = "prod"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.join_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only nodeconfig --cluster prod --wait"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_rbac" {
  triggers_replace = "3e3615359eab17d3"
  input = {
    cluster = "platform"
    stack   = "rbac"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack rbac"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_storage" {
  triggers_replace = "98b995fd78220a03"
  input = {
    cluster = "platform"
    stack   = "storage"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack storage"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_metrics-server" {
  triggers_replace = "c4c6b9fcf896f39d"
  input = {
    cluster = "platform"
    stack   = "metrics-server"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack metrics-server"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_monitoring" {
  triggers_replace = "506e173e585397f6"
  input = {
    cluster = "platform"
    stack   = "monitoring"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
    terraform_data.stack_platform_storage,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack monitoring"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_alerting" {
  triggers_replace = "9e9d90c51c39d572"
  input = {
    cluster = "platform"
    stack   = "alerting"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
    terraform_data.stack_platform_monitoring,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack alerting"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_argocd" {
  triggers_replace = "f8ce805ee01fc942"
  input = {
    cluster = "platform"
    stack   = "argocd"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.cni_platform,
    terraform_data.cni_prod,
    terraform_data.cni_staging,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack argocd"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_jenkins" {
  triggers_replace = "461a8ebad3e4aeea"
  input = {
    cluster = "platform"
    stack   = "jenkins"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
    terraform_data.stack_platform_storage,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack jenkins"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_sealed-secrets" {
  triggers_replace = "1640d9dfbc7cf3e2"
  input = {
    cluster = "platform"
    stack   = "sealed-secrets"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack sealed-secrets"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_backup" {
  triggers_replace = "e86ed50f1514ca4c"
  input = {
    cluster = "platform"
    stack   = "backup"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_platform,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
    terraform_data.stack_platform_argocd,
    terraform_data.stack_platform_jenkins,
    terraform_data.stack_platform_monitoring,
    terraform_data.stack_platform_storage,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack backup"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_platform_registry" {
  triggers_replace = "8510af3ba0df8898"
  input = {
    cluster = "platform"
    stack   = "registry"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.cni_platform,
    terraform_data.cni_prod,
    terraform_data.cni_staging,
    terraform_data.nodeconfig_platform-master,
    terraform_data.nodeconfig_platform-worker1,
    terraform_data.nodeconfig_platform-worker2,
    terraform_data.stack_platform_storage,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster platform --wait --stack registry"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_rbac" {
  triggers_replace = "9e4f9de4a7900903"
  input = {
    cluster = "dev"
    stack   = "rbac"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack rbac"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_network-policies" {
  triggers_replace = "198cca575b583c39"
  input = {
    cluster = "dev"
    stack   = "network-policies"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
    terraform_data.stack_dev_istio,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack network-policies"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_metrics-server" {
  triggers_replace = "8b23591469b24381"
  input = {
    cluster = "dev"
    stack   = "metrics-server"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack metrics-server"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_hpa-demo" {
  triggers_replace = "43356f838e5cca12"
  input = {
    cluster = "dev"
    stack   = "hpa-demo"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
    terraform_data.stack_dev_gatekeeper,
    terraform_data.stack_dev_istio,
    terraform_data.stack_dev_metrics-server,
    terraform_data.stack_dev_quotas,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack hpa-demo"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_istio" {
  triggers_replace = "d5609b10e0f86d2f"
  input = {
    cluster = "dev"
    stack   = "istio"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack istio"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_gatekeeper" {
  triggers_replace = "2fe3a858c6529e0f"
  input = {
    cluster = "dev"
    stack   = "gatekeeper"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack gatekeeper"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_dev_quotas" {
  triggers_replace = "c1c7f62003cd7ce3"
  input = {
    cluster = "dev"
    stack   = "quotas"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_dev,
    terraform_data.nodeconfig_dev-master,
    terraform_data.nodeconfig_dev-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster dev --wait --stack quotas"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_staging_rbac" {
  triggers_replace = "f6a0d9a0c8b87347"
  input = {
    cluster = "staging"
    stack   = "rbac"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_staging,
    terraform_data.nodeconfig_staging-master,
    terraform_data.nodeconfig_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster staging --wait --stack rbac"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_staging_metrics-server" {
  triggers_replace = "218a6fb4fd712ff6"
  input = {
    cluster = "staging"
    stack   = "metrics-server"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_staging,
    terraform_data.nodeconfig_staging-master,
    terraform_data.nodeconfig_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster staging --wait --stack metrics-server"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_staging_quotas" {
  triggers_replace = "a6060c080aeb68cf"
  input = {
    cluster = "staging"
    stack   = "quotas"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_staging,
    terraform_data.nodeconfig_staging-master,
    terraform_data.nodeconfig_staging-worker1,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster staging --wait --stack quotas"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_prod_rbac" {
  triggers_replace = "8b35b396a0a582a4"
  input = {
    cluster = "prod"
    stack   = "rbac"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.nodeconfig_prod-master,
    terraform_data.nodeconfig_prod-worker1,
    terraform_data.nodeconfig_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster prod --wait --stack rbac"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_prod_metrics-server" {
  triggers_replace = "7a2c778bbf9eddf1"
  input = {
    cluster = "prod"
    stack   = "metrics-server"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.nodeconfig_prod-master,
    terraform_data.nodeconfig_prod-worker1,
    terraform_data.nodeconfig_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster prod --wait --stack metrics-server"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}

resource "terraform_data" "stack_prod_quotas" {
  triggers_replace = "d209034a688168d9"
  input = {
    cluster = "prod"
    stack   = "quotas"
    config  = "../clusters.json"
  }
  depends_on = [
    terraform_data.cni_prod,
    terraform_data.nodeconfig_prod-master,
    terraform_data.nodeconfig_prod-worker1,
    terraform_data.nodeconfig_prod-worker2,
  ]
  provisioner "local-exec" {
    command     = "labctl --config ../clusters.json install --only stacks --cluster prod --wait --stack quotas"
    working_dir = path.module
    environment = var.ssh_password == null ? {} : { LABCTL_SSH_PASSWORD = var.ssh_password }
  }
}
